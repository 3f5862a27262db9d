from memos_pipeline.cli import main

main()
