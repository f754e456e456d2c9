from .cli import main

if __name__ == "__main__":  # the docs build imports every module to read its names
    main()
