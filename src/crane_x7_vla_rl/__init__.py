"""crane_x7_vla_rl: PPO / GRPO fine-tuning of VLA policies with LoRA in the Lift simulators."""

__version__ = "0.1.0"
