from agentforge.cli_errors import run_hydra_main
from agentforge.main import main

if __name__ == "__main__":
    run_hydra_main(main)
