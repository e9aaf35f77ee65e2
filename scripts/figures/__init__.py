"""Reproduce the Scalio paper's figures with the `scalio-ycsb` harness.

Modules:
  runs      -- one harness invocation (`Run`): its command line and result file name
  settings  -- the emulated-testbed defaults and the quick/full scales
  plans     -- which runs each figure needs
  execute   -- building the harness, running the plans, storing JSON, reporting failures
  results   -- loading result JSON and extracting the plotted series
  draw      -- the figures (matplotlib, imported lazily)
  venv      -- the scripts' own virtual environment (scripts/.venv)

Only `draw` needs matplotlib; everything else is standard library.
"""
