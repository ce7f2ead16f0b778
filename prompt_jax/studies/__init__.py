"""Small studies on the skill gym (CPU, minutes); each prints and writes gym results only."""
