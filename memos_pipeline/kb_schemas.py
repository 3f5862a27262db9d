"""Request bodies of the knowledge-base routes (api/knowledgebase.py), as MemOS's client sends them (every field it
knows, unset ones as null: see ``schemas._ClientRequest``).

A file in a JSON body is ``{"name", "content"}``: ``content`` is the text itself, or a base64 ``data:`` URI for any
supported file (a PDF). MemOS also takes a URL there; we fetch nothing from the network, so a URL is a 422 that says
to upload the file instead. Multipart uploads do not pass through these models: the route reads the ``file`` parts
and checks them the same way (size, type, content).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from memos_pipeline.schemas import SafeText, _ClientRequest

# One file's limit (its bytes; a data URI's decoded bytes). A 200-page PDF of text is 1-5 MB.
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_FILES_PER_ADD = 20
_KB_ID = Field(min_length=1, max_length=256, description="a knowledge base id (/create/knowledgebase answers it)")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)


class _KbRequest(_ClientRequest):
    # Unknown keys are accepted and named in data.ignored, as on /add/message: other MemOS releases send others.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)


class CreateKnowledgebaseRequest(_KbRequest):
    knowledgebase_name: SafeText = Field(min_length=1, max_length=256)
    knowledgebase_description: SafeText = Field("", max_length=10_000)


class DeleteKnowledgebaseRequest(_KbRequest):
    knowledgebase_id: SafeText = _KB_ID


class FileIn(_ClientRequest):
    """One file of a JSON upload."""

    ALIASES: ClassVar[dict[str, str]] = {"file_name": "name", "text": "content"}
    name: SafeText = Field(min_length=1, max_length=512, description="file name; its extension picks the reader")
    # Not SafeText: a text file's own control characters are dropped by the reader, not a reason to refuse it.
    content: str = Field(min_length=1, description="the text, or a base64 data: URI (data:application/pdf;base64,…)")
    content_type: SafeText | None = Field(None, max_length=128, description="used when the name has no extension")

    @field_validator("content")
    @classmethod
    def _not_a_url(cls, v: str) -> str:
        if re.match(r"^https?://", v.strip(), re.IGNORECASE) and len(v.strip().split()) == 1:
            raise ValueError("URLs are not fetched; send the file's text, a base64 data: URI, or a multipart upload")
        return v

    def payload(self) -> tuple[bytes, str | None]:
        """The file's bytes and the content type a data URI names (ValueError for bad base64)."""
        m = _DATA_URI.match(self.content)
        if m is None:
            return self.content.encode("utf-8", "surrogatepass"), self.content_type
        try:
            data = base64.b64decode(self.content[m.end() :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("content: not valid base64 after the data: URI's header") from None
        return data, m.group("mime") or self.content_type


class AddKnowledgebaseFileRequest(_KbRequest):
    knowledgebase_id: SafeText = _KB_ID
    file: list[FileIn] = Field(min_length=1, max_length=MAX_FILES_PER_ADD)

    @field_validator("file", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v


class GetKnowledgebaseFileRequest(_KbRequest):
    """One of ``file_ids`` (those files) or ``knowledgebase_id`` (a page of its files), as MemOS has it."""

    file_ids: list[Annotated[SafeText, Field(min_length=1, max_length=256)]] | None = Field(None, max_length=100)
    knowledgebase_id: SafeText | None = Field(None, min_length=1, max_length=256)
    type: Literal["document", "skill"] | None = Field(
        None, description="MemOS's file types; every file here is a document"
    )
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(20, ge=1, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> GetKnowledgebaseFileRequest:
        if (self.file_ids is None) == (self.knowledgebase_id is None):
            raise ValueError("give exactly one of file_ids and knowledgebase_id")
        return self


class DeleteKnowledgebaseFileRequest(_KbRequest):
    file_ids: list[Annotated[SafeText, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=100)
