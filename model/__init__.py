"""ptwbench model: AArch64 two-stage translation, KVM/arm64 stage-2 fault handling, policies."""
