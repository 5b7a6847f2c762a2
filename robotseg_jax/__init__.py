"""RobotSeg (SAM 2.1 + SEMA + RPG + LET) in JAX/Flax."""
