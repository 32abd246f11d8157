"""``fgclep study``: does FG-CLEP's stage 2 + 3 help, and where? The grid of controlled stage-3 runs on the
synthetic corpus, where the truth is known (:mod:`.grid` runs it, :mod:`.report` compares the arms)."""
