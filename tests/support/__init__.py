"""What the tests share: the fake engine and the in-process server (:mod:`.fake`), request builders
(:mod:`.requests`), the subprocess server (:mod:`.process`) and fault injection (:mod:`.faults`).

Test modules never import each other; they import from here (``tests/`` is on ``sys.path`` through the
rootdir conftest).
"""
