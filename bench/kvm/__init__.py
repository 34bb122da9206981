"""ptwbench kvm: replaying micro-scenarios on a real KVM/arm64 under QEMU (docs/real-kvm.md)."""
