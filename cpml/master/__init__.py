"""The cpml-master job runner: cluster client, share distribution, round driver, training loop, CLI."""
