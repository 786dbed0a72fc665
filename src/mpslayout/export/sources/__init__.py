"""Sources: one package per file format (``onnx``, ``keras``, ``torch`` for state_dicts and
safetensors). Each reads a model file into a :class:`~mpslayout.export.plan.Plan` and knows
nothing of the targets."""
