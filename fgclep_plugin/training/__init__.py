"""open_clip integration and training: every hook into open_clip (``hooks``), the training data pipeline
(``pipeline``) and the zero-shot check run during training (``zeroshot``). The entry point is
``python -m fgclep_plugin.train``."""
