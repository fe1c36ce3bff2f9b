"""relic's experiment configs, installed with the package as ``relic.configs``.

Each module's ``get_config(arg=None)`` builds one job's ml_collections config; its docstring holds
the command, the expected result and the compute. ``--config=NAME`` finds them from any working
directory (``relic/config_files.py``).
"""
