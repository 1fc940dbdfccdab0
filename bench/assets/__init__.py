"""What a cell needs from its task, built once and cached (:mod:`bench.core.cache`): the class tasks' data
splits, base model, Retrain model and UA classifier (:mod:`.classes`, trained by :mod:`.training`), and the
concept tasks' text-to-image model, training data and evaluation sets (:mod:`.concepts`)."""
