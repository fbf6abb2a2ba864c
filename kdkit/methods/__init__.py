"""kdkit's built-in methods.  ``kd`` (:mod:`kdkit.methods.kd`) is registered as an internal plugin."""
