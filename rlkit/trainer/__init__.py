"""Driver loops per algorithm (GRPO now; PPO and DPO later)."""
