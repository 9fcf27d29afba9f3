"""Bridges to other toolkits, each an optional extra imported only when used: `ipsolve.interop.deepinv`
(DeepInverse physics and denoisers; `pip install 'ipsolve[deepinv]'`)."""
