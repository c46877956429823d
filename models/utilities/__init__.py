"""General utilities every layer above ``models.base`` may use, none of them about the story:
atomic files (:mod:`~models.utilities.files`), the device and its free memory
(:mod:`~models.utilities.device`), counting host-device synchronizations
(:mod:`~models.utilities.device_syncs`), and the entry points of the scripts with their one-line
errors and signal handling (:mod:`~models.utilities.entry_points`)."""
