"""The weights formats :mod:`herbs.weights` reads and writes, one module each: ``torch_zip``
and ``torch_legacy`` (``torch.save`` files, whose pickle is :mod:`~herbs.formats.torch_pickle`),
``safetensors`` and ``npz``. Each has ``load(path)`` and, where herbs writes the format,
``save(obj, f)`` onto an open binary file; :mod:`herbs.weights` picks one."""
