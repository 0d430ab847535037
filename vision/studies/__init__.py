"""The four studies of spec-002, each a config dataclass -> one run directory (tables, figures, weights).

- :mod:`vision.studies.soar`: SOAR and FOAR regularised training (chapter 3, Algorithm 3.1), evaluated under
  PGD-20 and APGD-DLR.
- :mod:`vision.studies.frequency`: SGD vs Adam vs RMSProp, DCT bands and the linear-model theory (chapter 4).
- :mod:`vision.studies.hierarchy`: coarse/fine label hierarchies, hierarchical PGD, the HAR model (chapter 5).
- :mod:`vision.studies.alignment`: aligning a surrogate to a witness model for transfer attacks (chapter 6).

Shared helpers (data subsets, training through :func:`vision.defenses.loop.train_epoch`, tables and figures) live in
:mod:`vision.studies.common`. The attacks (APGD-CE, APGD-DLR, APGD-T, PGD) come from :mod:`vision.attacks`.
"""
