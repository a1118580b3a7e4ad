"""One front door: ``python -m avl_lab <verb> [key=value ...]``, one config loader, one help.

- :mod:`avl_lab.cli.args`: argv (``key=value``, ``--flag value``, ``-v``) to a dotlist,
- :mod:`avl_lab.cli.loader`: dataclass schema + YAML + dotlist merged by OmegaConf, every
  error a :class:`~avl_lab.errors.ConfigError` naming the key,
- :mod:`avl_lab.cli.config_file`: ``config=FILE`` for every verb, its keys under the command
  line's,
- :mod:`avl_lab.cli.helptext`: ``--help`` generated from the schemas' field docstrings,
- :mod:`avl_lab.cli.app`: quiet output, ``-v``, and user errors as one ``error:`` line, exit 2.
"""

from avl_lab.cli.app import run_verb
from avl_lab.cli.args import Argv, parse_argv
from avl_lab.cli.config_file import with_config_file
from avl_lab.cli.helptext import field_docs, help_text
from avl_lab.cli.loader import load_structured, schema_keys, split_keys

#: ``python -m avl_lab <verb>`` -> the module whose ``main(argv) -> int`` runs it.
VERBS = {
    "evaluate": "avl_lab.evaluate",
    "sweep": "avl_lab.sweep",
    "figures": "avl_lab.figures",
    "analyze": "avl_lab.analyze",
    "train": "avl_lab.train.cli",
}

__all__ = [
    "VERBS", "Argv", "field_docs", "help_text", "load_structured", "parse_argv", "run_verb",
    "schema_keys", "split_keys", "with_config_file",
]
