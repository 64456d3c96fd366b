"""The backends: one module per solver family, each an adapter behind the protocol of
`base.py`. Importing a backend module registers its algorithms and string names; its
third-party package (nevergrad, diffrax, ...) is imported only when it solves."""
