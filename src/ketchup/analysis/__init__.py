"""Analyses, tables and figures beyond the main table: ``python -m ketchup.analysis <command>``.

One module per job: :mod:`settings` (config defaults), :mod:`variance` (covariance trace and its
bootstrap), :mod:`grad_variance` (policy-gradient variance at the KL student), :mod:`significance`
(paired bootstrap), :mod:`ksweep`, :mod:`lengths`, :mod:`sizes`, :mod:`curves`, :mod:`tables_paper`
(main.md / main.tex), :mod:`paper` (paper numbers beside ours), :mod:`figures` (pure plotting
functions returning matplotlib Figures). Importing this package is light: no torch.
"""
