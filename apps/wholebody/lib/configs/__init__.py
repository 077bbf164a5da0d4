from lib.configs.spleen import SpleenSegmentation
from lib.configs.vista3d import Vista3D
from lib.configs.wholebody import WholeBodySegmentation

# --conf models picks from these names; they are also the infer and train task names.
CONFIGS = {"wholebody": WholeBodySegmentation, "spleen": SpleenSegmentation, "vista3d": Vista3D}
