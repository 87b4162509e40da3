"""Code that speaks to the kernel about namespaces and what holds them (see :mod:`emulator.kernel.holder`)
and the run's resource needs against the machine's limits (:mod:`emulator.kernel.budget`)."""
