"""Theory experiments: teacher-student specialisation and robustness (spec-001, :mod:`.teacher_student`), the
regularisation statistics of adversarial robustness (spec-004, :mod:`.regularisation`) and properties of networks
(spec-000 chapter 6, :mod:`.properties`: Lemma 6.1, Hessian extremes, norm-bias, effective rank, NTK).

The building blocks are small modules with their own tests: :mod:`.specialization` (normalised correlations, patch
PCA, in/out-of-plane deviations), :mod:`.oracle_attacks` (teacher-student attacks and training losses),
:mod:`.conv_spectrum` (FFT singular values of convolutions, RankMin/RankMax), :mod:`.hessian` (Hessian-vector
products, power iteration), :mod:`.linear_embedding` (Lemma 6.1), :mod:`.norm_bias`, :mod:`.ntk`,
:mod:`.lemma31` (spec-004 Lemma 3.1) and :mod:`.nets` (the small networks).
"""
