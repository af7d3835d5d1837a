"""Episodes on disk (LeRobot v3.0 / v2.1), validation, and the training cache."""
