"""The choices and defaults the command lines offer, in a module that imports nothing, so `--help` is instant.

Each is defined here once; the modules that act on them (cpml.field, cpml.data, ...) import them from here.
"""

DEFAULT_PRIME = 2**25 - 39  # 33554393, the largest prime below 2^25 (the paper's 2^25-37 is composite)
MODELS = ("logistic", "linear")
# exact: the workers return X̃w̃, the master applies the true sigmoid, the workers return X̃ᵀẽ (two exchanges a
# round, R = 2(K+T-1)+1); polynomial: the paper's degree-r fit, evaluated by the workers (one exchange)
SIGMOIDS = ("exact", "polynomial")
SCALINGS = ("minmax", "standard", "none")
DATA_FORMATS = ("auto", "csv", "npz", "svmlight")
MPC_PROTOCOLS = ("bgw", "bh08")  # the MPC baselines of cpml.mpc
DEFAULT_CHUNK_BYTES = 1 << 20  # the largest share chunk in one message: far below gRPC's default 4 MiB limit
