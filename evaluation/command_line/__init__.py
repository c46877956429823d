"""The command line of the scripts: the application layer above the library.

- :mod:`evaluation.command_line.flags`: the flag groups every script shares (a flag means the
  same thing in every script) and the parsers of the scripts that train;
- :mod:`evaluation.command_line.config_flags`: which flag sets which setting of the run
  configuration, the changes a command line makes, the estimators it names, and what it allows
  a run to import;
- :mod:`evaluation.command_line.opening`: how a script starts and opens what it works on (a run
  folder to train, a trained run to evaluate, the torchrun process group);
- :mod:`evaluation.command_line.parsers`: the parser of every script, one function per script
  (``parsers.train()``, ...), and ``PARSERS``, all of them;
- :mod:`evaluation.command_line.commands`: what ``train.py`` and ``explore.py`` do with their
  parsed flags, for the tutorial to run the same steps;
- :mod:`evaluation.command_line.flag_reference`: ``docs/flags.md`` from the parsers.

Scripts use it as ``from evaluation import command_line as cli``.
"""

from evaluation.command_line.config_flags import (CONFIG_PATHS, FAMILIES, OPTION_FLAGS, flag,
                                                  Changes, config_changes, estimator_names,
                                                  estimator_options, num_samples_for,
                                                  own_sample_counts, own_sample_flags,
                                                  trusted_parts, estimator_option_defaults)
from evaluation.command_line.flags import (add_common_flags, config_default, option_defaults,
                                           GENERAL_OPTIONS, DATA_FLAGS, MODEL_FLAGS,
                                           TRAINING_FLAGS, add_data_flags,
                                           add_model_flags, add_training_flags, make_parser,
                                           make_training_parser, add_opened_run_flags,
                                           add_evaluation_flags, add_estimator_flags,
                                           check_positive)
from evaluation.command_line.opening import (start, processes, time_budget, open_training,
                                             OpenRun, open_run)
from evaluation.command_line.flag_reference import (flag_reference)

__all__ = [
    'CONFIG_PATHS', 'Changes', 'DATA_FLAGS', 'FAMILIES', 'GENERAL_OPTIONS',
    'MODEL_FLAGS', 'OPTION_FLAGS', 'OpenRun', 'TRAINING_FLAGS', 'add_common_flags',
    'add_data_flags', 'add_estimator_flags', 'add_evaluation_flags', 'add_model_flags',
    'add_opened_run_flags', 'add_training_flags', 'check_positive', 'config_changes',
    'config_default', 'estimator_names', 'estimator_option_defaults', 'estimator_options',
    'flag', 'flag_reference', 'make_parser', 'make_training_parser', 'num_samples_for',
    'open_run', 'open_training', 'option_defaults', 'own_sample_counts', 'own_sample_flags',
    'processes', 'start', 'time_budget', 'trusted_parts']
