"""What every agent of the zoo shares: networks, trajectory collection, the Agent base class."""
