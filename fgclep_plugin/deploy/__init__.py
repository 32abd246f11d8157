"""Using a trained checkpoint outside training: classify ECG files, export for open_clip's hub loader."""
