"""SSH settings shared by our NETCONF server and client."""

# AES-GCM first: with AES-NI it costs a fraction of chacha20-poly1305 per packet, which is
# most of the CPU of a controller syncing a thousand devices. The rest keep interoperability
# with clients and servers that lack it (paramiko, OpenSSH builds without GCM).
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr", "aes192-ctr", "aes256-ctr"]
