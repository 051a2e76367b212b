"""The MPC baselines of the paper (BGW and BH08 over Shamir shares), sans-I/O: sharing, parties, master."""

from cpml.mpc.messages import MASTER, Kind, Message, Traffic
from cpml.mpc.party import MpcParty, ProtocolError
from cpml.mpc.plan import PROTOCOLS, MpcPlan, PartySpec
from cpml.mpc.session import MpcSession
from cpml.mpc.shamir import party_points, reconstruct, share
from cpml.mpc.simulator import MpcRun, simulate_mpc

__all__ = [
    "MASTER",
    "PROTOCOLS",
    "Kind",
    "Message",
    "MpcParty",
    "MpcPlan",
    "MpcRun",
    "MpcSession",
    "PartySpec",
    "ProtocolError",
    "Traffic",
    "party_points",
    "reconstruct",
    "share",
    "simulate_mpc",
]
