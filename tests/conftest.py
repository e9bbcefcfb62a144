from hypothesis import settings

# Shared CI machines are slow and noisy: a property may take longer than
# hypothesis' 200 ms default deadline without anything being wrong.
settings.register_profile("modeshift", deadline=None, print_blob=True)
settings.load_profile("modeshift")
