"""The whole topology as plain processes on one machine (`make up`), from the same templates and
variables that the Ansible roles deploy to VMs."""
