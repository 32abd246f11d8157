"""The model: the 1D-ResNet ECG tower (``tower``), its per-sample transform (``transform``), the SigLIP + FNM
loss (``loss``) and the one function that embeds ECGs and texts and scores pairs (``scoring``)."""
