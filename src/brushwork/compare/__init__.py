"""Comparison grids (AUTOMATIC1111's X/Y/Z plot): axes, their values and how each cell's request differs."""
