"""kvmfleet: a Kubernetes operator for fleets of KVM hypervisors and their virtual machines."""

__version__ = "0.1.0"
