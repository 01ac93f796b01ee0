"""Small shared helpers (atomic files, devices, seeding)."""
