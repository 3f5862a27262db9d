"""The job-control tasks of a batch job (``memos_pipeline.jobs.runner.JobKind``), the same five for every kind:
``memos.<queue>.<kind>_begin``, ``_batch``, ``_finalize``, ``_abort`` (the CLI calls them one by one) and
``_all`` (the whole job without a client waiting). Registered by the module of the queue the kind runs on."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Task, chord, group

from memos_pipeline.jobs.runner import JobBatch, JobConflict, JobKind, JobStep, NothingToDo
from workers.base import PipelineTask
from workers.celery import MAX_RETRIES, app

log = logging.getLogger("memos.workers.jobs")


def job_tasks(kind: JobKind[Any], **options: Any) -> Task:
    """Register ``kind``'s tasks (``options``: more task options, such as ``autoretry_for``); returns ``_all``."""
    opts = {"bind": True, "base": PipelineTask, "max_retries": MAX_RETRIES, "ignore_result": False, **options}

    def record(job: Any) -> dict[str, Any] | None:
        return dataclasses.asdict(job) if job else None

    @app.task(name=kind.task("begin"), **opts)
    def begin(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
        return record(kind.begin(self.settings, JobStep.model_validate(payload).job_id))

    @app.task(name=kind.task("batch"), **opts)
    def batch(self: PipelineTask, payload: dict[str, Any]) -> int:
        b = JobBatch.model_validate(payload)
        return kind.run_batch(self.settings, b.job_id, b.batch)

    @app.task(name=kind.task("finalize"), **opts)
    def finalize(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any]:
        return kind.finalize(self.settings, JobStep.model_validate(payload).job_id)

    @app.task(name=kind.task("abort"), **opts)
    def abort(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any] | None:
        return record(kind.abort(self.settings, JobStep.model_validate(payload).job_id))

    @app.task(name=kind.task("all"), **opts)
    def run_all(self: PipelineTask, payload: dict[str, Any]) -> dict[str, Any]:
        """Start or resume the job, then advance it one window at a time: a chord of ``window`` batch tasks whose
        callback is this task again, until ``finalize``. Never waits on other tasks (it runs on the queue those
        tasks need); windows keep the queue short, so live tasks published meanwhile wait behind one window at
        most, not behind the whole job."""
        req = kind.start_model.model_validate(payload)
        settings = self.settings
        if req.job_id is None:
            try:
                job, _ = kind.start(settings, req)
            except NothingToDo as exc:  # a schedule firing again: nothing to do
                return {"status": exc.status, "reason": str(exc)}
            except (JobConflict, ValueError) as exc:  # not transient: retrying cannot help
                log.warning("%s: %s", kind.task("all"), exc)
                return {"status": "refused", "reason": str(exc)}
            req = req.model_copy(update={"job_id": job.job_id})
        began = kind.begin(settings, str(req.job_id))
        if began is None or began.finished:
            return {"status": began.status if began else "gone", "job_id": req.job_id}
        job = kind.plan(settings, began)
        todo = kind.pending(settings, job)[: req.window or kind.default_window(settings)]
        if todo:
            batches = [batch.s(JobBatch(job_id=job.job_id, batch=i).model_dump()) for i in todo]
            chord(group(batches))(run_all.si(req.model_dump()))
            return {"status": "dispatched", "job_id": job.job_id, "batches": todo}
        if kind.before_finalize is not None:
            kind.before_finalize(settings, job.job_id)
        return kind.finalize(settings, job.job_id)

    return run_all
