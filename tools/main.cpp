// resq command-line entry point (placeholder while the tools are written).
int main() { return 0; }
