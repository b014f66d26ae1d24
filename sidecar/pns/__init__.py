"""Push service clients: APNs, FCM, and plugins from extra_pns_dir."""
