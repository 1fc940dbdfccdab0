"""Running many cells beside other processes: claims on cells and shared assets (:mod:`.claims`),
the claimed cell runner used by ``bench run`` and every sweep worker (:mod:`.cells`), and the Ray
sweep (:mod:`.sweep`). Orchestration only: nothing here changes a cell's numbers."""
