"""argofl pipelines: hera workflow builders, the compiler, the local executor and the ``argofl`` CLI."""
