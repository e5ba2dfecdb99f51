"""Robot environments: Meta-World (MuJoCo, rendered offscreen) behind one small interface."""
