"""Split learning (vanilla and SplitFed v1) as Argo DAG steps.

A round is a DAG: a ``daemon`` server task holding the top of the model, the labels and the top
optimizer, serving an HTTP API (stdlib ``ThreadingHTTPServer``); client tasks holding the data and the
bottom of the model, sending activations ("smashed data") plus batch indices and receiving the
gradients w.r.t. those activations. Tensors travel as safetensors bytes (never JSON lists, never pickle).
"""
