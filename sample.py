"""Turn prompts into videos: ``python sample.py --help`` (the same as ``ls-video sample``).

    python sample.py --model outputs/demo/model --prompt "a red square moving left" --out samples
"""

import sys

from ls_video.commands.sample import main

if __name__ == "__main__":
    sys.exit(main())
