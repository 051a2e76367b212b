"""Prime-field arithmetic: the field value, CSPRNG sampling, exact modular matmul and Lagrange coding."""

from cpml.field.lagrange import encoding_matrix, evaluation_points, interpolation_matrix
from cpml.field.matmul import matmul_mod, matmul_mod_centred
from cpml.field.prime_field import DEFAULT_PRIME, Elements, PrimeField, field_for
from cpml.field.primes import is_prime, largest_prime_below
from cpml.field.rns import MAX_RESIDUES, ResidueBasis, basis_for, residue_primes
from cpml.field.sampling import uniform

__all__ = [
    "DEFAULT_PRIME",
    "MAX_RESIDUES",
    "Elements",
    "PrimeField",
    "ResidueBasis",
    "basis_for",
    "encoding_matrix",
    "evaluation_points",
    "field_for",
    "interpolation_matrix",
    "is_prime",
    "largest_prime_below",
    "matmul_mod",
    "matmul_mod_centred",
    "residue_primes",
    "uniform",
]
