"""Generated from embedrt/v1/embedding.proto by scripts/generate_stubs.py. DO NOT EDIT: change the .proto and run the script."""
