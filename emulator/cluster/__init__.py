"""One emulation over several hosts (issue 13): placement of nodes on hosts, the fake-host lab, cross-host
links. Nothing here is wired into ``satnetem run`` yet: each piece stands and is tested on its own."""
