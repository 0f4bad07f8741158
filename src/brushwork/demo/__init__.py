"""Procedural demo dataset for Brushwork's tiny text-to-image model."""
