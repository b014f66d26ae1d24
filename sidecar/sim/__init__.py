"""A simulator of APNs, FCM and Google OAuth for tests, demos and staging."""
